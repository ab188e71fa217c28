"""Offline training jobs run by the pld command: demonstrations, the simulation base policy, classifiers."""
