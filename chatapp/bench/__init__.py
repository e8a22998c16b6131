"""`chatapp bench`: decode speed, time to the first token, warm starts and memory, measured.

- `runner`: the measurements and their table;
- `stats` and `report`: paired ratios with their intervals, and the printed report;
- `warm_start` and `tui_speed`: fresh processes timed to a ready model, and the TUI's speed.

May import: every other package.
"""
