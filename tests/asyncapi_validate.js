// Validates an AsyncAPI 3.0 document against the specification's own JSON Schema
// (@asyncapi/specs, read with ajv), both installed by `scripts/dev up` in the folder
// KASSA_TEST_ASYNCAPI_VALIDATOR names. Usage: node tests/asyncapi_validate.js <document.json>
// Prints "valid", or the errors and exits 1. Used by tests/it/contract.rs.
const fs = require('fs');
const path = require('path');
const modules = path.join(process.env.KASSA_TEST_ASYNCAPI_VALIDATOR || '', 'node_modules');
const Ajv = require(path.join(modules, 'ajv'));
const addFormats = require(path.join(modules, 'ajv-formats'));
const specs = require(path.join(modules, '@asyncapi', 'specs'));

const document = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const version = document.asyncapi;
const schema = specs.schemasWithoutId[version];
if (!schema) {
  console.error(`no JSON Schema for AsyncAPI ${version}`);
  process.exit(1);
}
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
const validate = ajv.compile(schema);
if (!validate(document)) {
  console.error(JSON.stringify(validate.errors, null, 1));
  process.exit(1);
}
console.log('valid');
