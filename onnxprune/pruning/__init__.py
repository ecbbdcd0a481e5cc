"""Channel groups, importance, plans, surgery (sparse and slim), cost, inspect, transform."""
