"""Network definitions and their execution engines."""
