"""The composition root: the ``iotp`` command line, the one place that knows every part.

Each command imports the part it runs only when it runs, so that ``iotp --help`` stays fast
and an image without the optional packages still offers every command it registers.
"""
