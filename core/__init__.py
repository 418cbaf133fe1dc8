"""The shared lower layer: key names, the script loader, error codes and typed Redis helpers.

Everything above (matcher/, chat/, gateway/) may import this package; it imports none of them.
"""
