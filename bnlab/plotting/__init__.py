"""Figure style and the figures the package draws itself (matplotlib and seaborn are imported only here)."""
