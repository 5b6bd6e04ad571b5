"""What the tests share: the test servers, fixtures (loaded by tests/conftest.py as plugins),
running iotp services, and the harnesses that publish to them and read what they wrote."""
