"""How far to trust a fitted model: its probabilities calibrated (calibration.py), and images of
no known class told apart from the rest (unknown.py)."""
