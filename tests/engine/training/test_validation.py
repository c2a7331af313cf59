"""The validation pass keeps each image's IoU and structure loss, in dataset order."""
import torch

from engine.build import build_trainer
from engine.evaluation.mask_scores import per_image_scores
from engine.training.losses import structure_loss


class WithoutIndex(torch.utils.data.Dataset):
    """The validation set with the "index" key dropped (a user's dataset may not have it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        return {key: value for key, value in self.dataset[item].items() if key != "index"}


def test_per_image_scores_follow_the_dataset_order_and_average_to_the_metrics(tiny_config):
    trainer = build_trainer(tiny_config(synthetic_val_size=7, batch_size=3))  # 3 batches, the last one short
    metrics = trainer.validate(trainer.model)
    table = trainer.last_per_image_scores
    assert table.shape == (7, 2) and table.device.type == "cpu"
    assert abs(float(table[:, 0].double().mean()) - metrics["iou"]) < 1e-6
    assert abs(float(table[:, 1].double().mean()) - metrics["loss"]) < 1e-5
    model = trainer.unwrapped_model.eval()
    for index in (0, 4, 6):  # row i is dataset item i
        sample = trainer.data.val_dataset[index]
        with torch.no_grad():
            logits = model(sample["image"][None]).logits.float()
        expected_iou = per_image_scores(torch.sigmoid(logits), sample["mask"][None])["iou"]
        expected_loss = structure_loss(logits, sample["mask"][None], reduction="none")
        torch.testing.assert_close(table[index], torch.cat([expected_iou, expected_loss]).float(), rtol=1e-4, atol=1e-5)
    trainer.data.val_dataset = WithoutIndex(trainer.data.val_dataset)
    trainer.validate(trainer.model)
    assert torch.equal(trainer.last_per_image_scores, table)  # the order without "index" is the same
