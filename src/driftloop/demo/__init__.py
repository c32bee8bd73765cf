"""The demos and what they need: scenarios, sample data, data sets, the report."""
