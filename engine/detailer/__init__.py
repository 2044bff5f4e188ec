"""ADetailer: parse its arguments, detect with YOLO, shape the masks, choose each mask's prompt and seed."""
