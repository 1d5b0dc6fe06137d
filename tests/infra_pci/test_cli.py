"""`cofre infra` in process (moto only simulates AWS inside this process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cofre_cli.main import app
from infra_pci.aws import AwsClients
from tests.infra_pci.conftest import HsmStubs


def test_infra_cli(
    aws: tuple[AwsClients, HsmStubs], main_vpc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's clients must be the ones carrying the CreateHsm stubs.
    monkeypatch.setattr(AwsClients, "for_region", classmethod(lambda cls, region: aws[0]))
    config = tmp_path / "infra.toml"
    config.write_text(f'peer_vpc_id = "{main_vpc}"\nallowed_source_cidrs = ["10.0.8.0/22"]\n')
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["infra", *args, "--config", str(config)])
        return result.exit_code, result.output

    code, out = run("plan")
    assert code == 0, out
    assert "to create" in out
    assert "+ vpc" in out
    code, out = run("apply")
    assert code == 0, out
    assert "initialize-cluster" in out
    code, out = run("apply")
    assert "no changes" in out
    code, out = run("verify")
    assert code == 0, out
    assert out.count("PASS") == 12  # fips mode (session 34), endpoint policies (atk49h)
    vpc = aws[0].ec2.describe_vpcs(Filters=[{"Name": "tag:cofre:role", "Values": ["vpc"]}])
    igw = aws[0].ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    aws[0].ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc["Vpcs"][0]["VpcId"])
    code, out = run("verify")
    assert code == 1
    assert "FAIL no-internet-gateway" in out
    code, out = run("destroy")
    assert "would delete" in out
