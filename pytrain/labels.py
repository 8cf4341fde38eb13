"""The label value the loss skips (masked chat turns, padding): PyTorch's and Hugging Face's -100.

One definition for the data that writes it, the ops and kernels that skip it, and the trainer that counts
the labels that are not it.
"""

IGNORE_INDEX = -100
