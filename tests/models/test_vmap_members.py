"""trainer.members: vmap (peerkd.models.members.VmappedMembers): identical members of any type as one vectorised forward
computes what separate modules compute: outputs, gradients, BatchNorm statistics, state_dict keys and exports."""
import copy

import pytest
import torch

from tests.helpers import assert_one_step, build, random_batch, tiny_task
from peerkd.models import build_model
from peerkd.models.members import MemberList, VmappedMembers, build_members


def _pair(name: str, copies: int = 2, **options):
    torch.manual_seed(0)
    members = [build_model(name, 5, **options) for _ in range(copies)]
    return MemberList(copy.deepcopy(members)), VmappedMembers(copy.deepcopy(members))


@pytest.mark.parametrize("name, options", [("resnet8", {}), ("timm:test_resnet", {"zero_init_last": False})])
def test_vmapped_members_match_separate_modules_in_training_mode(name, options):
    if name.startswith("timm:"):
        pytest.importorskip("timm")  # timm's blocks are a module type the fusion translator does not know
    separate, vmapped = _pair(name, **options)
    separate.train(), vmapped.train()
    inputs = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(j)) for j in range(2)]
    ref, out = separate.outputs(inputs), vmapped.outputs(inputs)
    for a, b in zip(ref.logits + ref.features + ref.maps, out.logits + out.features + out.maps):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    weights = torch.randn(2, 5, generator=torch.Generator().manual_seed(9))
    sum((w * z).sum() for w, z in zip(weights, ref.logits)).backward()
    sum((w * z).sum() for w, z in zip(weights, out.logits)).backward()
    for j in range(2):
        for pname, p in separate[j].named_parameters():
            stacked = vmapped.params[vmapped.param_names.index(pname)]
            # the grouped convolution sums in another order; BatchNorm at batch 4 amplifies the rounding elementwise
            difference = (stacked.grad[j].view(p.shape) - p.grad).norm()
            assert difference <= 1e-4 * p.grad.norm() + 1e-7, (pname, float(difference), float(p.grad.norm()))
        state = vmapped.member_state_dict(j)
        for bname, buffer in separate[j].named_buffers():  # running mean / var and the step count, per member
            torch.testing.assert_close(state[bname], buffer, rtol=1e-5, atol=1e-6)
    assert vmapped.state_dict().keys() == separate.state_dict().keys()  # {j}.<name>, as the ModuleList


def test_vmapped_state_dict_moves_between_executions_and_exports_plain_members():
    separate, vmapped = _pair("resnet8")
    with torch.no_grad():
        for p in separate.parameters():
            p.add_(0.01 * torch.randn_like(p))
    vmapped.load_state_dict(separate.state_dict())
    vmapped.eval(), separate.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(separate.run(x), vmapped.run(x)):  # a shared input: mapped over the members only
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        exported = vmapped.export(1)
        assert type(exported) is type(separate[1])
        torch.testing.assert_close(exported(x), separate[1](x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vmapped.member_parameter(1, "head.fc.weight"), separate[1].head.fc.weight)


def test_dml_trains_with_vmapped_peers():
    task = tiny_task()
    method = build({"name": "dml", "models": ["resnet8", "resnet8"]}, task, members="vmap")
    assert isinstance(method.models, VmappedMembers)
    assert_one_step(method, random_batch(task, batch_size=4))
    assert isinstance(build_members([build_model("resnet8", 5)], "vmap"), MemberList)  # one member: nothing to map
