"""whisperfarm: split long audio at pauses, farm the chunks out to work-stealing workers,
and stitch one transcript on the whole file's timeline."""

__version__ = "0.1.0"
