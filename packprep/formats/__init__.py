"""Output formats: each module holds a writer and its reader side by side."""
