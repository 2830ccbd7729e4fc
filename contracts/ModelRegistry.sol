// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title fedcare ModelRegistry: anchors released models so anyone can prove them later.
/// @notice A record is written once per model hash (the sha256 of the model file) and never
/// erased; revocation marks it, it does not delete it. Registrars (the fedcare hubs) write,
/// the owner manages registrars. The artifact URI is only emitted in the event (cheap, and
/// the hash, not the URI, is what identifies the model).
contract ModelRegistry {
    /// One record per model hash, packed in two storage slots.
    struct Record {
        bytes32 provenanceRoot;   // Merkle root over the round's provenance (see docs/chain.md)
        bytes32 roundId;          // sha256 of "<namespace>/<FederatedRound name>"
        address registrar;        // who anchored it
        uint48 blockNumber;       // block that anchored it (0 = no record)
        uint48 revokedBlock;      // block that revoked it (0 = not revoked)
    }

    address public owner;
    mapping(address => bool) public isRegistrar;
    mapping(bytes32 => Record) private records;
    uint256 public anchoredCount;

    event Anchored(bytes32 indexed modelHash, bytes32 provenanceRoot, bytes32 indexed roundId,
                   address indexed registrar, string uri);
    event Revoked(bytes32 indexed modelHash, address indexed registrar, string reason);
    event RegistrarSet(address indexed registrar, bool allowed);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    error NotOwner(address caller);
    error NotRegistrar(address caller);
    error ZeroAddress();
    error ZeroModelHash();
    error ZeroProvenanceRoot();
    error AlreadyAnchored(bytes32 modelHash, uint256 blockNumber);
    error NotAnchored(bytes32 modelHash);
    error AlreadyRevoked(bytes32 modelHash, uint256 blockNumber);
    error LengthMismatch();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyRegistrar() {
        if (!isRegistrar[msg.sender]) revert NotRegistrar(msg.sender);
        _;
    }

    constructor() {
        owner = msg.sender;
        isRegistrar[msg.sender] = true;
        emit OwnershipTransferred(address(0), msg.sender);
        emit RegistrarSet(msg.sender, true);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    function setRegistrar(address registrar, bool allowed) external onlyOwner {
        if (registrar == address(0)) revert ZeroAddress();
        isRegistrar[registrar] = allowed;
        emit RegistrarSet(registrar, allowed);
    }

    /// Anchor one model. Reverts if the hash was ever anchored (even if revoked since).
    function anchor(bytes32 modelHash, bytes32 provenanceRoot, bytes32 roundId, string calldata uri)
        external onlyRegistrar
    {
        _anchor(modelHash, provenanceRoot, roundId, uri);
    }

    /// Anchor several models in one transaction; each gets its own record and event, so each
    /// stays verifiable on its own. All-or-nothing: one duplicate reverts the whole batch.
    function anchorBatch(bytes32[] calldata modelHashes, bytes32[] calldata provenanceRoots,
                         bytes32[] calldata roundIds, string[] calldata uris) external onlyRegistrar
    {
        uint256 n = modelHashes.length;
        if (provenanceRoots.length != n || roundIds.length != n || uris.length != n) revert LengthMismatch();
        for (uint256 i = 0; i < n; i++) {
            _anchor(modelHashes[i], provenanceRoots[i], roundIds[i], uris[i]);
        }
    }

    /// Revoke an anchored model. The record stays; only revokedBlock is set.
    function revoke(bytes32 modelHash, string calldata reason) external onlyRegistrar {
        Record storage rec = records[modelHash];
        if (rec.blockNumber == 0) revert NotAnchored(modelHash);
        if (rec.revokedBlock != 0) revert AlreadyRevoked(modelHash, rec.revokedBlock);
        rec.revokedBlock = uint48(block.number);
        emit Revoked(modelHash, msg.sender, reason);
    }

    function get(bytes32 modelHash) external view returns (Record memory) {
        return records[modelHash];
    }

    function isAnchored(bytes32 modelHash) external view returns (bool) {
        return records[modelHash].blockNumber != 0;
    }

    function isRevoked(bytes32 modelHash) external view returns (bool) {
        return records[modelHash].revokedBlock != 0;
    }

    function _anchor(bytes32 modelHash, bytes32 provenanceRoot, bytes32 roundId, string calldata uri) private {
        if (modelHash == bytes32(0)) revert ZeroModelHash();
        if (provenanceRoot == bytes32(0)) revert ZeroProvenanceRoot();
        Record storage rec = records[modelHash];
        if (rec.blockNumber != 0) revert AlreadyAnchored(modelHash, rec.blockNumber);
        rec.provenanceRoot = provenanceRoot;
        rec.roundId = roundId;
        rec.registrar = msg.sender;
        rec.blockNumber = uint48(block.number);
        anchoredCount += 1;
        emit Anchored(modelHash, provenanceRoot, roundId, msg.sender, uri);
    }
}
