"""Helpers the tests share (``tests`` is on pytest's ``pythonpath``): ``oracle`` for comparing
with the float64 reference, ``hostile`` for running hostile inputs in a child process."""
