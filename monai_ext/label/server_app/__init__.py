"""The folder passed as ``--app`` to ``monailabel start_server``: ``main.py`` exposes :class:`MonaiExtLabelApp`."""
