"""`iotp bench`: reproducible measurements of iotp on the machine it runs on."""
