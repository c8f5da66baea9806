"""Threshold calibration: choose the score (tuning split), certify λ (certification split), save."""
