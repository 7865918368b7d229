"""File formats: one module owns each (reader and writer), every write atomic."""
