"""What runs the product: configuration, the launcher, the embedded Redis, rate budgets."""
