"""Generalist (Alg. 1), the algorithm alone: read `generalist.Generalist.train_step` first.

  learners    the base learners: one network, one optimizer and one task each (step 1)
  generalist  the parent model: the learners' steps, then the EMAs, G and redistribution (2-4)
  mixing      the arithmetic of steps 2-4: EMA decay, EMA update, interpolation
  schedules   every schedule as a fraction of training: mixing weights, communication, LR
  callbacks   hands each epoch's schedule values to the model; the best-G choice; NaN guard
  optimizers  PyTorch-form SGD with coupled L2 weight decay
  variants    the paper's variants as presets (learners and mixing weights)

Nothing here reads flags, files or datasets: `api.build_generalist` assembles it.
"""
