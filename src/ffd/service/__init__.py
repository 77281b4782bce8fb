"""ffd's HTTP service (``python -m ffd.serve``): the shipped model behind an API and a web page."""
