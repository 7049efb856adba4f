"""The shared core every layer may use: settings, params, model card, locking and networking helpers."""
