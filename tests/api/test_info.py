def test_vocab_of_the_default_model(client):
    body = client.get("/vocab").json()
    assert body["model"] == "default"
    assert body["unk_index"] == 0
    assert body["chars"][0] is None
    assert body["size"] == len(body["chars"]) == 18
    assert set(body["chars"][1:]) == set("hey how are yougood i am finehave a nice day")


def test_health(client):
    assert client.get("/health").json() == {
        "status": "ok",
        "ready": True,
        "model": "default",
        "device": "cpu",
        "decode_dtype": "float32",  # the tutorial model is too small for bf16 to pay
    }


def test_models_lists_the_active_default(client):
    body = client.get("/models").json()
    assert body["active"] == "default"
    [summary] = body["models"]
    assert summary["name"] == "default" and summary["active"] and summary["ok"]
    assert summary["cell"] == "rnn" and summary["hidden_size"] == 12 and summary["num_parameters"] > 0
    model = client.get("/models/default").json()
    assert model["model_config"]["cell"] == "rnn"
    assert model["metrics"]["final_loss"] < 0.5


def test_openapi_docs_have_an_example_for_each_request(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/complete", "/vocab", "/train", "/train/{job_id}", "/models", "/health"):
        assert path in paths
    for name in ("CompleteRequest", "TrainRequest"):
        assert schema["components"]["schemas"][name]["examples"]
