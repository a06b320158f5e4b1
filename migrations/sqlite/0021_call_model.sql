-- 0021: calls by model, for searches. A search for a model with few or no calls
-- (`model:gpt-4-32k`) walked the tenant's whole history, newest first, looking for one;
-- with this index it reads that model's calls only. Each recorded call writes one more
-- index entry (measured by bench/proxy.py: the recorder's commit and CPU per call).
CREATE INDEX calls_tenant_model ON calls (tenant_id, model, created_at, id);
