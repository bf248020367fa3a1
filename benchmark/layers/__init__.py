"""What adapters and suites share: layers, statistics, model surgery, models and losses.

An adapter never imports another adapter; anything two of them use lives here.
"""
