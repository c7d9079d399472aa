"""One router per resource: predict, model, health (+ metrics), page."""
