"""Model training: the tiny default student (:mod:`~rl2f.training.tiny_model`,
:mod:`~rl2f.training.bootstrap`), GRPO over didactic conversations and critique distillation.

Submodules import torch, transformers and TRL; nothing is imported here so that importing the
package stays cheap.
"""
