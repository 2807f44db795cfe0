"""generalist_tf: Generalist adversarial training (CVPR 2023) and Generalist++ in TensorFlow/Keras."""
