// A Node.js client of nmtserve's gRPC API, as a JavaScript team would write one: grpc-js with proto-loader reading
// protos/nmtserve/v1/translator.proto at run time (no generated code). It runs fixed scenarios against the server
// given as argv[2] and prints one JSON object of what it saw; tests/test_grpc_interop_node.py judges it.
import { createRequire } from "node:module";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [address, protoPath] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const healthProto = require.resolve("grpc-health-check/proto/health/v1/health.proto");
const loaderOptions = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const nmt = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, loaderOptions)).nmtserve.v1;
const health = grpc.loadPackageDefinition(protoLoader.loadSync(healthProto, loaderOptions)).grpc.health.v1;

const credentials = grpc.credentials.createInsecure();
const translator = new nmt.Translator(address, credentials);
// gzip on every message this channel sends (grpc-js's algorithm 2), as a client on a metered link would set it
const gzipped = new nmt.Translator(address, credentials, { "grpc.default_compression_algorithm": 2 });

const unary = (client, method, request, options = {}) =>
  new Promise((resolve) => {
    client[method](request, options, (error, response) =>
      resolve(error ? { error: { code: error.code, details: error.details } } : { response }),
    );
  });

const hypotheses = (response) =>
  response.translations.map((t) =>
    t.hypotheses.map((h) => ({ text: h.text, score: h._score === "score" ? h.score : null })),
  );

function stream(requests) {
  return new Promise((resolve) => {
    const call = translator.TranslateStream();
    const seen = [];
    call.on("data", (r) =>
      seen.push({
        request_id: r.request_id,
        partials: r.partials.map((p) => ({ index: p.index, text: p.text })),
        translations: hypotheses(r),
        error: r.error ? { code: r.error.code, message: r.error.message } : null,
      }),
    );
    call.on("error", (e) => resolve({ seen, status: { code: e.code, details: e.details } }));
    call.on("end", () => resolve({ seen, status: { code: 0 } }));
    for (const request of requests) call.write(request);
    call.end();
  });
}

const texts = process.env.INTEROP_TEXTS ? JSON.parse(process.env.INTEROP_TEXTS) : ["save it"];
const nbest = { beam_size: 4, num_hypotheses: 2, return_scores: true };
const out = {};
const translated = await unary(translator, "Translate", { texts, options: nbest });
out.unary = translated.response ? hypotheses(translated.response) : translated;
const noScores = await unary(translator, "Translate", { texts: texts.slice(0, 1), options: { return_scores: false } });
out.unary_no_scores = noScores.response ? hypotheses(noScores.response) : noScores;
const compressed = await unary(gzipped, "Translate", { texts, options: nbest });
out.gzip = compressed.response ? hypotheses(compressed.response) : compressed;
out.too_wide_beam = await unary(translator, "Translate", { texts, options: { beam_size: 100000 } });
out.no_texts = await unary(translator, "Translate", { texts: [] });
out.unknown_model = await unary(translator, "Translate", { texts, model: "no-such-model" });
out.deadline = await unary(translator, "Translate", { texts }, { deadline: Date.now() - 1 });
out.after_deadline = (await unary(translator, "Translate", { texts: texts.slice(0, 1) })).response ? "ok" : "failed";
const info = await unary(translator, "GetModelInfo", {});
out.model_info = info.response ?? info;
const models = await unary(translator, "ListModels", {});
out.list_models = models.response ?? models;
out.stream = await stream([
  { request_id: "a", texts: texts.slice(0, 2), options: nbest },
  { request_id: "bad", texts, options: { beam_size: 100000 } },
  { request_id: "b", texts: texts.slice(-1), stream_partial: true },
]);
const healthClient = new health.Health(address, credentials);
out.health = await unary(healthClient, "Check", { service: "" });
out.health_translator = await unary(healthClient, "Check", { service: "nmtserve.v1.Translator" });
for (const client of [translator, gzipped, healthClient]) client.close();
process.stdout.write(JSON.stringify(out));
