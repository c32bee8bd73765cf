"""Models: training, scoring metrics and the versioned registry."""
