"""Learning rules: credit assignment (BP, FA, DFA), the optimizers, and the learners that run
one training step (output error -> credit -> GRAPES -> optimizer -> ``backend.update``)."""
