"""An example diffsolve restorer plugin: unconditional sampling, then one projection onto y."""

import diffsolve as ds
from diffsolve.inverse import Restorer


class Replace(Restorer):
    """Sample with the chosen solver, then x0 <- A^+ y + (I - A^+ A) x0 (needs a linear A)."""

    name = "example-replace"
    linear_only = True
    default_solver = ("ddim", {})

    def restore(self, task):
        op = task.linear
        x = task.sample(task.ode, task.x_T)
        return x - op.pinv(op.forward(x) - task.y, task.x_shape)


@ds.hookimpl
def register_restorers(register):
    register(Replace)
