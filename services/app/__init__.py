"""The application: one function per user action, and the one table of rules every door asks."""
