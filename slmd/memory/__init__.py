"""Memory pressure and the model's lifecycle: where pressure comes from
(sources), how it is graded (levels), what the daemon gives back (reactor,
actions) and how the model is unloaded and lazily reloaded (model)."""
