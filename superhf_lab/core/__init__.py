"""What every layer shares and that imports nothing of the lab: config errors, fault points, completion text.

May import: nothing of superhf_lab.
"""
