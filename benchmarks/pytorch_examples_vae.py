"""pytorch/examples' MNIST VAE (``vae/main.py``), self-contained, as the yardstick for memory.

What ``vae/main.py`` does, written the same way: ``torchvision.datasets.MNIST`` with
``transforms.ToTensor()`` behind a ``DataLoader`` (batch 128, the training set shuffled), the
784-400-20 MLP VAE (``fc1``, ``fc21``, ``fc22``, ``fc3``, ``fc4``, sigmoid output), Adam at 1e-3,
the loss ``BCE(sum) + KLD`` with the closed-form Gaussian KL, then per epoch one training pass
and one test pass. It runs on the CPU and reads MNIST from ``--data-dir`` (``ROOT/MNIST/raw``)
with ``download=False``. Unlike the original it writes no reconstruction or sample images
(``save_image`` into ``results/``); the reconstructions are still computed in the test pass.
It does not import pyro_vae, so its peak memory is PyTorch and torchvision's alone::

    python benchmarks/pytorch_examples_vae.py --data-dir ../shared/data --epochs 1

``--max-batches N`` stops each pass after N batches (a quick run for tests).
"""

import argparse
import itertools

import torch
import torch.utils.data
from torch import nn, optim
from torch.nn import functional as F
from torchvision import datasets, transforms


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence summed over all elements and the batch.

    KLD: ``-1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)``, Appendix B of Kingma & Welling,
    Auto-Encoding Variational Bayes, ICLR 2014.
    """
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train(model, optimizer, train_loader, epoch, max_batches=None, log_interval=10):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(itertools.islice(train_loader, max_batches)):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)} "
                f"({100.0 * batch_idx / len(train_loader):.0f}%)]\t"
                f"Loss: {loss.item() / len(data):.6f}"
            )
    average = train_loss / len(train_loader.dataset)
    print(f"====> Epoch: {epoch} Average loss: {average:.4f}")
    return average


def test(model, test_loader, max_batches=None):
    model.eval()
    test_loss = 0
    with torch.no_grad():
        for i, (data, _) in enumerate(itertools.islice(test_loader, max_batches)):
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            if i == 0:  # the original saves this as results/reconstruction_EPOCH.png
                n = min(data.size(0), 8)
                torch.cat([data[:n], recon_batch.view(-1, 1, 28, 28)[:n]])
    test_loss /= len(test_loader.dataset)
    print(f"====> Test set loss: {test_loss:.4f}")
    return test_loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../data", help="torchvision root (MNIST/raw)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="default 1 (the original: 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-batches", type=int, help="stop each pass after N batches")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=True, download=False, transform=transforms.ToTensor()),
        batch_size=args.batch_size,
        shuffle=True,
    )
    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST(args.data_dir, train=False, transform=transforms.ToTensor()),
        batch_size=args.batch_size,
        shuffle=False,
    )
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        train(model, optimizer, train_loader, epoch, args.max_batches)
        test(model, test_loader, args.max_batches)
        with torch.no_grad():  # the original saves this as results/sample_EPOCH.png
            model.decode(torch.randn(64, 20))


if __name__ == "__main__":
    main()
