"""An example fedit plugin: each method is one module (median.py, fp16.py) plus one entry-point line."""
