"""The bundled sample: procedural doodles and the script that pretrains the drawing classifier."""
