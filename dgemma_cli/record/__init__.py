"""`--record FILE`: the live canvas view of one answer as an asciicast (.cast), an animated SVG (.svg) or a
replay page (.html), recorded live or replayed from a saved `--frames` stream.

Deliberately empty: `views` imports `record.frame`, and `record.recording` imports `views`, so importing the
package must not pull either in. Import the modules themselves.
"""
