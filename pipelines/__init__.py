"""DVC stages: each module is a pure function plus a thin ``main`` that does the I/O."""
