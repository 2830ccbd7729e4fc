#!/usr/bin/env node
// Compile ModelRegistry.sol with the pinned solcjs into the committed artifact.
//   node contracts/compile.js           write operator/fedcare/integrations/contracts/ModelRegistry.json
//   node contracts/compile.js --check   exit 1 if the committed artifact differs from a fresh build
// Settings are fixed here (optimizer, EVM version) so the build is reproducible byte for byte.
"use strict";
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const HERE = __dirname;
const SOURCE = "ModelRegistry.sol";
const OUT = path.join(HERE, "..", "operator", "fedcare", "integrations", "contracts", "ModelRegistry.json");

function build() {
  const source = fs.readFileSync(path.join(HERE, SOURCE), "utf8");
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: source } },
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: "cancun",
      metadata: { bytecodeHash: "none" },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.methodIdentifiers"] } },
    },
  };
  const out = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (out.errors || []).filter((e) => e.severity === "error");
  for (const e of out.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(2);
  const c = out.contracts[SOURCE].ModelRegistry;
  const artifact = {
    contractName: "ModelRegistry",
    compiler: "solc " + solc.version(),
    settings: { optimizer: input.settings.optimizer, evmVersion: input.settings.evmVersion },
    sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
    abi: c.abi,
    methodIdentifiers: c.evm.methodIdentifiers,
    bytecode: "0x" + c.evm.bytecode.object,
    deployedBytecode: "0x" + c.evm.deployedBytecode.object,
  };
  return JSON.stringify(artifact, null, 2) + "\n";
}

const fresh = build();
const rel = path.relative(path.join(HERE, ".."), OUT);
if (process.argv.includes("--check")) {
  const committed = fs.existsSync(OUT) ? fs.readFileSync(OUT, "utf8") : "";
  if (committed !== fresh) {
    process.stderr.write(`${rel} is stale: run \`make contracts\` (node contracts/compile.js) and commit it.\n`);
    process.exit(1);
  }
  console.log(`${rel} is up to date with contracts/${SOURCE}.`);
} else {
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, fresh);
  console.log(`wrote ${rel}`);
}
