"""Virtual serial bus for SO-100/SO-101 (Feetech) and Koch (Dynamixel) arms, plus a synthetic camera.

Only the serial port is replaced: LeRobot's robots, its motor buses and the vendors' SDKs
(scservo_sdk, dynamixel_sdk) run unchanged and talk bytes to :class:`VirtualSerial`, which
parses instruction packets and answers status packets like a chain of servos. Each servo
keeps its control-table memory, so tests read back exactly what reached a motor
(``goal_log``: every Goal_Position written, in raw encoder ticks).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import dynamixel_sdk.port_handler as dxl_port
import numpy as np
import scservo_sdk.port_handler as ft_port
import serial
from dynamixel_sdk.protocol2_packet_handler import Protocol2PacketHandler
from lerobot.cameras import CameraConfig
from lerobot.cameras.camera import Camera
from lerobot.motors.dynamixel.tables import MODEL_CONTROL_TABLE as DXL_TABLES
from lerobot.motors.dynamixel.tables import MODEL_NUMBER_TABLE as DXL_MODELS
from lerobot.motors.encoding_utils import encode_sign_magnitude, encode_twos_complement
from lerobot.motors.feetech.tables import MODEL_CONTROL_TABLE as FT_TABLES
from lerobot.motors.feetech.tables import MODEL_NUMBER_TABLE as FT_MODELS

PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
BROADCAST = 0xFE
MOTOR_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
ARM_MODELS = {
    "so100_follower": ("feetech", ["sts3215"] * 6),
    "so101_follower": ("feetech", ["sts3215"] * 6),
    "so100_leader": ("feetech", ["sts3215"] * 6),
    "so101_leader": ("feetech", ["sts3215"] * 6),
    "koch_follower": ("dynamixel", ["xl430-w250"] * 2 + ["xl330-m288"] * 4),
    "koch_leader": ("dynamixel", ["xl330-m077"] * 6),
}


class VirtualServo:
    """One servo's control table; Present_Position follows Goal_Position while torque is on."""

    def __init__(self, protocol: str, model: str, motor_id: int, calibration: dict) -> None:
        self.protocol, self.model, self.id = protocol, model, motor_id
        self.table = (FT_TABLES if protocol == "feetech" else DXL_TABLES)[model]
        self.memory = bytearray(256 if protocol == "feetech" else 1024)
        self.set("Model_Number", (FT_MODELS if protocol == "feetech" else DXL_MODELS)[model])
        self.set("ID", motor_id)
        if protocol == "feetech":
            self.set("Homing_Offset", encode_sign_magnitude(calibration["homing_offset"], 11))
        else:
            self.set("Homing_Offset", encode_twos_complement(calibration["homing_offset"], 4))
            self.set("Drive_Mode", calibration["drive_mode"])
        self.set("Min_Position_Limit", calibration["range_min"])
        self.set("Max_Position_Limit", calibration["range_max"])
        self.set("Present_Position", (calibration["range_min"] + calibration["range_max"]) // 2)

    def _span(self, name: str) -> tuple[int, int]:
        return self.table[name]

    def set(self, name: str, value: int) -> None:
        addr, size = self._span(name)
        self.memory[addr : addr + size] = int(value).to_bytes(size, "little", signed=False)

    def get(self, name: str) -> int:
        addr, size = self._span(name)
        return int.from_bytes(self.memory[addr : addr + size], "little")

    def write(self, addr: int, data: bytes) -> None:
        self.memory[addr : addr + len(data)] = data
        goal_addr = self._span("Goal_Position")[0]
        if addr <= goal_addr < addr + len(data) and self.get("Torque_Enable"):
            self.set("Present_Position", self.get("Goal_Position"))

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.memory[addr : addr + size])


@dataclass
class VirtualArm:
    """The servos on one port, the raw goals they received and optional faults."""

    arm_type: str
    calibration: dict
    servos: dict[int, VirtualServo] = field(default_factory=dict)
    goal_log: list[dict[str, int]] = field(default_factory=list)
    silent_transactions: int = 0  # the next N instruction packets get no answer (a cable glitch)
    fail_after_goals: int | None = None  # after this many Goal_Position writes, go silent ...
    fault_length: int = 8  # ... for this many instruction packets (LeRobot retries reads twice)
    human_motion: bool = False  # a hand moves the (torque-off) leader along a smooth path

    def __post_init__(self) -> None:
        self.protocol, models = ARM_MODELS[self.arm_type]
        for name, model in zip(MOTOR_NAMES, models):
            cal = self.calibration[name]
            self.servos[cal["id"]] = VirtualServo(self.protocol, model, cal["id"], cal)
        self._t0 = time.perf_counter()

    @classmethod
    def from_file(cls, arm_type: str, path: Path, **kwargs) -> VirtualArm:
        return cls(arm_type, json.loads(Path(path).read_text()), **kwargs)

    def by_name(self, name: str) -> VirtualServo:
        return self.servos[self.calibration[name]["id"]]

    def torque_enabled(self) -> dict[str, int]:
        return {n: self.by_name(n).get("Torque_Enable") for n in MOTOR_NAMES}

    def move_by_hand(self) -> None:
        t = time.perf_counter() - self._t0
        for k, name in enumerate(MOTOR_NAMES):
            cal = self.calibration[name]
            mid, amp = (cal["range_min"] + cal["range_max"]) / 2, (cal["range_max"] - cal["range_min"]) / 4
            self.by_name(name).set("Present_Position", int(mid + amp * np.sin(2 * np.pi * 0.5 * t + k)))

    def record_goals(self, ids: list[int]) -> None:
        names = {cal["id"]: n for n, cal in self.calibration.items()}
        self.goal_log.append({names[i]: self.servos[i].get("Goal_Position") for i in ids})
        if self.fail_after_goals is not None and len(self.goal_log) >= self.fail_after_goals:
            self.silent_transactions, self.fail_after_goals = self.fault_length, None


def _feetech_packet(motor_id: int, payload: list[int]) -> bytes:
    body = [motor_id, len(payload) + 1, *payload]
    return bytes([0xFF, 0xFF, *body, ~sum(body) & 0xFF])


_DXL = Protocol2PacketHandler()


def _dxl_packet(motor_id: int, payload: list[int]) -> bytes:
    body: list[int] = []
    for byte in payload:  # byte stuffing: FF FF FD in the body is sent as FF FF FD FD
        body.append(byte)
        if body[-3:] == [0xFF, 0xFF, 0xFD]:
            body.append(0xFD)
    length = len(body) + 2  # + CRC
    packet = [0xFF, 0xFF, 0xFD, 0x00, motor_id, length & 0xFF, length >> 8, *body]
    crc = _DXL.updateCRC(0, packet, len(packet))
    return bytes([*packet, crc & 0xFF, crc >> 8])


def _unstuff(params: list[int]) -> list[int]:
    out: list[int] = []
    i = 0
    while i < len(params):
        out.append(params[i])
        if out[-3:] == [0xFF, 0xFF, 0xFD] and i + 1 < len(params) and params[i + 1] == 0xFD:
            i += 1
        i += 1
    return out


class VirtualSerial:
    """Byte-level stand-in for ``serial.Serial`` that answers like the servos of a :class:`VirtualArm`."""

    def __init__(self, arm: VirtualArm) -> None:
        self.arm = arm
        self.is_open = True
        self._rx = bytearray()
        self._tx = bytearray()
        self._lock = threading.Lock()

    # -- pyserial surface used by the SDKs' PortHandler --
    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        with self._lock:
            data, self._rx[:] = bytes(self._rx[:size]), self._rx[size:]
        return data

    def write(self, data: bytes) -> int:
        self._tx.extend(data)
        self._consume()
        return len(data)

    def flush(self) -> None: ...

    def reset_input_buffer(self) -> None:
        self._rx.clear()

    def close(self) -> None:
        self.is_open = False

    # -- protocol --
    def _consume(self) -> None:
        while True:
            packet = self._next_packet()
            if packet is None:
                return
            motor_id, instruction, params = packet
            if self.arm.silent_transactions > 0:
                self.arm.silent_transactions -= 1
                continue
            if self.arm.human_motion:
                self.arm.move_by_hand()
            with self._lock:
                self._rx.extend(self._answer(motor_id, instruction, params))

    def _next_packet(self) -> tuple[int, int, list[int]] | None:
        tx = self._tx
        if self.arm.protocol == "feetech":
            if len(tx) < 4 or len(tx) < 4 + tx[3]:
                return None
            packet = list(tx[: 4 + tx[3]])
            del tx[: 4 + tx[3]]
            return packet[2], packet[4], packet[5:-1]
        if len(tx) < 7:
            return None
        size = 7 + (tx[5] | tx[6] << 8)
        if len(tx) < size:
            return None
        packet = list(tx[:size])
        del tx[:size]
        return packet[4], packet[7], _unstuff(packet[8:-2])

    def _status(self, motor_id: int, data: list[int]) -> bytes:
        if self.arm.protocol == "feetech":
            return _feetech_packet(motor_id, [0, *data])
        return _dxl_packet(motor_id, [0x55, 0, *data])

    def _answer(self, motor_id: int, instruction: int, params: list[int]) -> bytes:
        servos, dxl = self.arm.servos, self.arm.protocol == "dynamixel"
        word = (lambda lo, hi: lo | hi << 8) if dxl else (lambda lo, hi: lo)
        if instruction == PING:
            targets = servos.values() if motor_id == BROADCAST else [servos[motor_id]] if motor_id in servos else []
            out = b""
            for s in targets:
                extra = [*s.read(0, 2), s.get("Firmware_Version")] if dxl else []
                out += self._status(s.id, extra)
            return out
        if instruction == READ and motor_id in servos:
            addr, size = (word(params[0], params[1]), word(params[2], params[3])) if dxl else params[:2]
            return self._status(motor_id, list(servos[motor_id].read(addr, size)))
        if instruction == WRITE and motor_id in servos:
            addr, data = (word(params[0], params[1]), params[2:]) if dxl else (params[0], params[1:])
            servos[motor_id].write(addr, bytes(data))
            return self._status(motor_id, [])
        if instruction == SYNC_READ:
            (addr, size), ids = ((word(*params[0:2]), word(*params[2:4])), params[4:]) if dxl else (params[:2], params[2:])
            return b"".join(self._status(i, list(servos[i].read(addr, size))) for i in ids if i in servos)
        if instruction == SYNC_WRITE:
            (addr, size), rest = ((word(*params[0:2]), word(*params[2:4])), params[4:]) if dxl else (params[:2], params[2:])
            ids = []
            for k in range(0, len(rest), size + 1):
                servos[rest[k]].write(addr, bytes(rest[k + 1 : k + 1 + size]))
                ids.append(rest[k])
            if addr == servos[ids[0]]._span("Goal_Position")[0]:
                self.arm.record_goals(ids)
            return b""
        return b""


@contextlib.contextmanager
def virtual_ports(arms: dict[str, VirtualArm]):
    """Route ``serial.Serial(port=...)`` of both SDKs to the virtual arms (other ports fail like absent devices)."""
    real = serial.Serial

    def open_port(*args, port=None, **kwargs):
        if port in arms:
            return VirtualSerial(arms[port])
        return real(*args, port=port, **kwargs)

    with patch.object(ft_port.serial, "Serial", open_port), patch.object(dxl_port.serial, "Serial", open_port):
        yield arms


def goal_ticks_within(arm: VirtualArm) -> bool:
    """Every Goal_Position the servos received lies inside the calibrated [range_min, range_max]."""
    return all(
        arm.calibration[name]["range_min"] <= raw <= arm.calibration[name]["range_max"]
        for goals in arm.goal_log
        for name, raw in goals.items()
    )


@CameraConfig.register_subclass("roboalign_synthetic")
@dataclass
class SyntheticCameraConfig(CameraConfig):
    """A camera whose frames are drawn in software (moving gradient); no device, no OpenCV."""


class SyntheticCamera(Camera):
    def __init__(self, config: SyntheticCameraConfig) -> None:
        super().__init__(config)
        self.config = config
        self._connected = False
        self._frame_index = 0

    @property
    def is_connected(self) -> bool:
        return self._connected

    @staticmethod
    def find_cameras() -> list[dict]:
        return []

    def connect(self, warmup: bool = True) -> None:
        self._connected = True

    def read(self) -> np.ndarray:
        self._frame_index += 1
        y, x = np.mgrid[0 : self.config.height, 0 : self.config.width]
        frame = (x + y + 4 * self._frame_index) % 256
        return np.repeat(frame[..., None], 3, axis=2).astype(np.uint8)

    def async_read(self, timeout_ms: float = 200) -> np.ndarray:
        return self.read()

    def read_latest(self, max_age_ms: int = 500) -> np.ndarray:
        return self.read()

    def disconnect(self) -> None:
        self._connected = False
