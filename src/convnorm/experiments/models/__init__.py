"""Models used by the experiments and benchmarks (plain Conv + BatchNorm; methods convert them)."""
from convnorm.experiments.models.resnet import ResNet, cifar_resnet18, cifar_resnet34, cifar_resnet50

__all__ = ["ResNet", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50"]
