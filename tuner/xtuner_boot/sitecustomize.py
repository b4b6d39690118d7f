# Started by Python at start-up when this folder is on PYTHONPATH (see tuner/xtuner_compat.py).
try:
    from tuner.xtuner_compat import boot
except ImportError:  # tuner is not importable: run XTuner unpatched
    pass
else:
    boot()
