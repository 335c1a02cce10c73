"""POS terminal simulator, load generator and end-to-end demo: a client of the switch, like a terminal."""
