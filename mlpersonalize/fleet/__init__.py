"""Fleet personalization on Flower: devices learn each other's labels, no drawing leaves a device.

* :mod:`.aggregate`: the server's arithmetic (count-weighted means of normalised rows), no Flower.
* :mod:`.device`: what a device does with its own store: train on its pending batches with the
  update's code and guard, score a candidate head on its own exemplars, adopt it as a version.
* :mod:`.publish`: a head given as rows, written as a new version through the store's swap.
* :mod:`.privacy`: optional local differential privacy on the rows a device sends (Flower's DP
  functions, imported only when a device turns it on).
* :mod:`.messages`, :mod:`.client_app`, :mod:`.server_app`: the Flower App (needs the ``fleet``
  extra, ``flwr``); :mod:`.deploy`: SuperLink and SuperNode processes, and ``flwr run``.

Only :mod:`.messages`, the apps and :mod:`.deploy` import ``flwr``; nothing outside this
package imports them, so the core install never needs it. See docs/fleet.md.
"""
