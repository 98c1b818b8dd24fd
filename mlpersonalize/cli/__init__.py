"""The command-line layer: parse, call one core function, render. No work happens here."""
