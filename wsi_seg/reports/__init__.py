"""What a result says: class areas, the slide report page, and scores against a ground
truth (``metrics``, ``evaluate_slide``)."""
