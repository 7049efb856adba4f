"""The release report's Jinja2 templates (package data: the ``*.j2`` files beside this one are shipped with it)."""
